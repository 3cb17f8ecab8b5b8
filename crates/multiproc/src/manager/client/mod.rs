//! The client side of a manager: connect to a `BaseManager` server (CPython's or ours) and use
//! its registered queues through proxies, as CPython's `BaseManager.connect()` and AutoProxy do.

/// Declares a proxy type: the struct over its [`Proxy`] (with a marker for its item types),
/// its `Debug`, its constructor and `try_clone`. What each proxy calls is written beside it.
macro_rules! proxy_type {
    (
        $(#[$doc:meta])*
        $name:ident $(<$($g:ident),+>)?;
        $(#[$clone_doc:meta])*
    ) => {
        $(#[$doc])*
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(bound = "")]
        pub struct $name$(<$($g),+>)? {
            proxy: Proxy,
            _types: std::marker::PhantomData<fn($($($g,)+)?) -> ($($($g,)+)?)>,
        }

        impl$(<$($g),+>)? std::fmt::Debug for $name$(<$($g),+>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("what", &self.proxy.what)
                    .field("ident", &self.proxy.ident)
                    .finish_non_exhaustive()
            }
        }

        impl$(<$($g),+>)? $name$(<$($g),+>)? {
            fn from_proxy(proxy: Proxy) -> Self {
                $name {
                    proxy,
                    _types: std::marker::PhantomData,
                }
            }

            $(#[$clone_doc])*
            ///
            /// # Errors
            /// If the server cannot be reached.
            pub fn try_clone(&self) -> Result<Self> {
                Ok(Self::from_proxy(self.proxy.try_clone()?))
            }
        }
    };
}

/// The four forms of `acquire` on a proxy whose server object takes CPython's
/// `acquire(blocking, timeout)`: `$what` is what it takes.
macro_rules! acquire_forms {
    ($name:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("Takes ", $what, ", waiting as long as it takes.")]
            ///
            /// # Errors
            /// The server's failure.
            pub fn acquire(&self) -> Result<()> {
                self.proxy
                    .call_as::<bool>("acquire", $crate::manager::client::acquire_args(true, None))
                    .map(drop)
            }

            #[doc = concat!("Takes ", $what, " if it is free now (`acquire(False)`); whether it did.")]
            ///
            /// # Errors
            /// The server's failure.
            pub fn try_acquire(&self) -> Result<bool> {
                self.proxy
                    .call_as("acquire", $crate::manager::client::acquire_args(false, None))
            }

            #[doc = concat!("Takes ", $what, ", waiting up to `timeout`; whether it did.")]
            ///
            /// # Errors
            /// The server's failure.
            pub fn acquire_timeout(&self, timeout: std::time::Duration) -> Result<bool> {
                self.proxy
                    .call_as(
                        "acquire",
                        $crate::manager::client::acquire_args(true, Some(timeout)),
                    )
            }

            #[doc = concat!("Takes ", $what, ", waiting until `deadline`; whether it did.")]
            ///
            /// # Errors
            /// The server's failure.
            pub fn acquire_deadline(&self, deadline: std::time::Instant) -> Result<bool> {
                self.acquire_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            }

            #[doc = concat!("Takes ", $what, " if it is free now, as a future: the form of [`try_acquire`](Self::try_acquire) to `.await`. Cancel-safe as [`acquire_async`](Self::acquire_async).")]
            ///
            /// # Errors
            /// The server's failure; a server that goes away meanwhile.
            #[cfg(all(feature = "async", not(loom)))]
            pub fn try_acquire_async(&self) -> impl std::future::Future<Output = Result<bool>> + Send + '_ {
                self.proxy.call_as_async(
                    "acquire",
                    $crate::manager::client::acquire_args(false, None),
                    $crate::manager::client::awaiting::OnDrop::ReleaseIfTaken,
                )
            }

            #[doc = concat!("Takes ", $what, ", as a future: the form of [`acquire`](Self::acquire) to `.await`, on any executor; bound it with your runtime's timeout.")]
            ///
            /// **Cancel-safe**: dropped before it completes, it holds nothing. A request already
            /// sent is undone when its reply comes: what it took is released again, on the same
            /// connection, and the proxy goes on with a new one.
            ///
            /// # Errors
            /// The server's failure; a server that goes away while it waits.
            #[cfg(all(feature = "async", not(loom)))]
            pub fn acquire_async(&self) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
                let call = self.proxy.call_as_async::<bool>(
                    "acquire",
                    $crate::manager::client::acquire_args(true, None),
                    $crate::manager::client::awaiting::OnDrop::ReleaseIfTaken,
                );
                async move { call.await.map(drop) }
            }
        }
    };
}

/// Writes proxy calls in their two forms: the blocking one, and (feature `async`) the one to
/// `.await`, named with `_async`. `args` makes the positional arguments (`?` works in it);
/// `reply` turns the server's reply, or its failure, into the result.
macro_rules! call_forms {
    ($(
        $(#[$doc:meta])*
        fn $name:ident / $name_async:ident $([$($generics:tt)*])?
            (&$self:ident $(, $arg:ident: $ty:ty)*) -> $out:ty
            = $method:literal ($args:expr) => $reply:expr;
    )*) => {$(
        $(#[$doc])*
        #[allow(clippy::redundant_closure_call)]
        pub fn $name$(<$($generics)*>)?(&$self $(, $arg: $ty)*) -> Result<$out> {
            let args: Vec<Value> = $args;
            ($reply)($self.proxy.call($method, args, Vec::new()))
        }

        #[doc = concat!("[`", stringify!($name), "`](Self::", stringify!($name),
            ") as a future, to `.await` on any executor.")]
        ///
        /// Dropped after its request went out, the call is still made on the server (its
        /// reply is dropped, and the proxy's next call connects again).
        ///
        /// # Errors
        #[doc = concat!("As [`", stringify!($name), "`](Self::", stringify!($name),
            "); a server that goes away meanwhile.")]
        #[cfg(all(feature = "async", not(loom)))]
        #[allow(clippy::redundant_closure_call)]
        pub fn $name_async$(<$($generics)*>)?(
            &$self $(, $arg: $ty)*
        ) -> impl std::future::Future<Output = Result<$out>> + Send {
            let args = (|| -> Result<Vec<Value>> { Ok($args) })();
            let call = args.map(|args| {
                $self.proxy.call_async(
                    $method,
                    args,
                    Vec::new(),
                    $crate::manager::client::awaiting::OnDrop::Nothing,
                )
            });
            let reply = $reply;
            async move { reply(call?.await) }
        }
    )*};
}

#[cfg(all(feature = "async", not(loom)))]
mod awaiting;
mod own;
mod proxies;

pub use proxies::{
    ArrayProxy, BarrierProxy, ConditionProxy, NamespaceProxy, ObjectProxy, SemaphoreProxy,
};

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::connection::wire::{Address, Client, WireConnection};
use crate::error::{Error, Result};
use crate::pickle::{self, Value};

/// A connection to a manager server (CPython's `BaseManager(address, authkey).connect()`).
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
#[derive(Debug, Clone)]
pub struct ManagerClient {
    address: Address,
    authkey: Vec<u8>,
}

/// `(blocking,)` or `(blocking, timeout)`, as CPython's `AcquirerProxy.acquire` sends them.
fn acquire_args(blocking: bool, timeout: Option<Duration>) -> Vec<Value> {
    let mut args = vec![Value::Bool(blocking)];
    args.extend(timeout.map(|t| Value::Float(t.as_secs_f64())));
    args
}

fn request(ident: Option<&str>, func: &str, args: Vec<Value>, kwds: Vec<(Value, Value)>) -> Value {
    Value::Tuple(vec![
        ident.map_or(Value::None, Value::str),
        Value::str(func),
        Value::Tuple(args),
        Value::Dict(kwds),
    ])
}

/// A reply as a `T`.
fn reply_as<T: DeserializeOwned>(reply: Result<Value>) -> Result<T> {
    Ok(pickle::from_value(reply?)?)
}

/// A reply whose value does not matter (`None`).
fn reply_unit(reply: Result<Value>) -> Result<()> {
    reply.map(drop)
}

/// Whether the call found what it looked for: false if it raised the built-in exception
/// `name` (a `KeyError`, an `AttributeError`).
fn found(reply: Result<Value>, name: &str) -> Result<bool> {
    match reply {
        Ok(_) => Ok(true),
        Err(e) if is_exception(&e, name) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `e` is the remote built-in exception `name` (`"AttributeError"`).
fn is_exception(e: &Error, name: &str) -> bool {
    matches!(e, Error::Remote { detail, .. }
        if detail.strip_prefix("builtins.").is_some_and(|d| d.starts_with(name)
            && d[name.len()..].starts_with(':')))
}

/// Turns a reply `(kind, value)` into the value or the error it carries.
fn unpack(what: &str, bytes: &[u8]) -> Result<Value> {
    let reply = pickle::decode(bytes)?;
    let Value::Tuple(mut parts) = reply else {
        return Err(Error::protocol(what, "a reply is a 2-tuple"));
    };
    if parts.len() != 2 {
        return Err(Error::protocol(what, "a reply is a 2-tuple"));
    }
    let value = parts.pop().expect("two parts");
    let kind = parts.pop().expect("two parts");
    match (kind.as_str(), value) {
        (Some("#RETURN"), v) => Ok(v),
        (Some("#ERROR"), exc) => Err(remote_exception(what, exc)),
        (Some("#TRACEBACK" | "#UNSERIALIZABLE"), Value::Str(text)) => Err(Error::Remote {
            what: what.to_string(),
            detail: text,
        }),
        (kind, _) => Err(Error::protocol(
            what,
            format!("unknown reply kind {kind:?}"),
        )),
    }
}

/// Maps a pickled exception onto the crate's errors (`queue.Empty` → `Empty`, …).
fn remote_exception(what: &str, exc: Value) -> Error {
    let name = exc
        .as_object()
        .and_then(|o| o.global())
        .map(|(m, n)| (m.to_string(), n.to_string()));
    match name.as_ref().map(|(m, n)| (m.as_str(), n.as_str())) {
        Some(("queue" | "_queue", "Empty")) => Error::Empty { what: what.into() },
        Some(("queue", "Full")) => Error::Full { what: what.into() },
        Some(("threading", "BrokenBarrierError")) => Error::BrokenBarrier { what: what.into() },
        Some((module, name)) => Error::Remote {
            what: what.to_string(),
            detail: format!("{module}.{name}: {exc}"),
        },
        None => Error::Remote {
            what: what.to_string(),
            detail: exc.to_string(),
        },
    }
}

impl ManagerClient {
    /// Connects and checks the address and authkey (CPython sends `dummy` for this).
    ///
    /// # Errors
    /// [`ErrorKind::AuthenticationFailed`](crate::ErrorKind::AuthenticationFailed) for a wrong
    /// authkey; [`ErrorKind::Io`](crate::ErrorKind::Io) if nobody listens.
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<ManagerClient> {
        let client = ManagerClient {
            address: address.clone(),
            authkey: authkey.to_vec(),
        };
        client.one_shot("dummy", Vec::new())?;
        Ok(client)
    }

    /// The server's address.
    pub(crate) fn address(&self) -> &Address {
        &self.address
    }

    /// The authkey this client proves it knows.
    pub(crate) fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// One request on a connection of its own, as CPython's `dispatch`.
    pub(super) fn one_shot(&self, func: &str, args: Vec<Value>) -> Result<Value> {
        self.one_shot_with(func, args, Vec::new())
    }

    fn one_shot_with(
        &self,
        func: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Value> {
        let mut conn = Client::connect(&self.address, &self.authkey)?;
        conn.send_bytes(&pickle::encode(&request(None, func, args, kwds))?)?;
        unpack(&format!("manager at {}", self.address), &conn.recv_bytes()?)
    }

    /// Creates (or, for a registered name, looks up) an object on the server and opens the
    /// proxy connection to it.
    pub(crate) fn proxy(&self, typeid: &str, args: Vec<Value>, what: String) -> Result<Proxy> {
        self.proxy_with(typeid, args, Vec::new(), what)
    }

    /// [`proxy`](Self::proxy) with keyword arguments for `create`.
    pub(super) fn proxy_with(
        &self,
        typeid: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
        what: String,
    ) -> Result<Proxy> {
        let mut create_args = vec![Value::str(typeid)];
        create_args.extend(args);
        let created = self.one_shot_with("create", create_args, kwds)?;
        let bad = || Error::protocol(what.as_str(), "create did not return (ident, exposed)");
        let Value::Tuple(parts) = created else {
            return Err(bad());
        };
        let mut parts = parts.into_iter();
        let Some(Value::Str(ident)) = parts.next() else {
            return Err(bad());
        };
        // A CPython server may list the methods as a tuple or a list; an odd entry is skipped.
        let exposed = match parts.next() {
            Some(Value::Tuple(names) | Value::List(names)) => names
                .into_iter()
                .filter_map(|n| match n {
                    Value::Str(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let conn = match self.proxy_connection() {
            Ok(conn) => conn,
            Err(e) => {
                // Give back the reference `create` took for us.
                let _ = self.one_shot("decref", vec![Value::Str(ident)]);
                return Err(e);
            }
        };
        Ok(Proxy {
            what,
            ident,
            exposed,
            conn: own::OwnConnection::new(conn),
            manager: self.clone(),
        })
    }

    /// A new connection turned into a proxy connection (`accept_connection`).
    fn proxy_connection(&self) -> Result<WireConnection> {
        let mut conn = Client::connect(&self.address, &self.authkey)?;
        let hello = request(
            None,
            "accept_connection",
            vec![Value::str("MainProcess")],
            Vec::new(),
        );
        conn.send_bytes(&pickle::encode(&hello)?)?;
        unpack("manager", &conn.recv_bytes()?)?;
        Ok(conn)
    }

    /// A proxy for the existing object `ident`, holding a reference of its own.
    pub(crate) fn attach(&self, ident: &str, exposed: Vec<String>, what: String) -> Result<Proxy> {
        let conn = self.proxy_connection()?;
        self.one_shot("incref", vec![Value::str(ident)])?;
        Ok(Proxy {
            what,
            ident: ident.to_string(),
            exposed,
            conn: own::OwnConnection::new(conn),
            manager: self.clone(),
        })
    }

    /// A new dict on the server (`SyncManager.dict()`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `dict` typeid.
    pub fn dict<K, V>(&self) -> Result<DictProxy<K, V>> {
        Ok(DictProxy::from_proxy(self.proxy(
            "dict",
            Vec::new(),
            "remote dict".into(),
        )?))
    }

    /// A new event on the server (`SyncManager.Event()`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Event` typeid.
    pub fn event(&self) -> Result<EventProxy> {
        Ok(EventProxy::from_proxy(self.proxy(
            "Event",
            Vec::new(),
            "remote event".into(),
        )?))
    }

    /// A new shared value on the server (`SyncManager.Value(typecode, value)`; the typecode
    /// only matters to CPython servers, which keep it: `"i"`, `"d"`, `"u"`…).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Value` typeid;
    /// a value that does not map onto Python's data model.
    pub fn value<T: Serialize>(&self, typecode: &str, value: &T) -> Result<ValueProxy<T>> {
        let args = vec![Value::str(typecode), pickle::to_value(value)?];
        Ok(ValueProxy::from_proxy(self.proxy(
            "Value",
            args,
            "remote value".into(),
        )?))
    }

    /// The dict the server registered as `typeid` (shared by every client that asks).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if there is no such typeid.
    pub fn registered_dict<K, V>(&self, typeid: &str) -> Result<DictProxy<K, V>> {
        Ok(DictProxy::from_proxy(self.proxy(
            typeid,
            Vec::new(),
            format!("remote dict {typeid:?}"),
        )?))
    }

    /// The list the server registered as `typeid` (shared by every client that asks).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if there is no such typeid.
    pub fn registered_list<T>(&self, typeid: &str) -> Result<ListProxy<T>> {
        Ok(ListProxy::from_proxy(self.proxy(
            typeid,
            Vec::new(),
            format!("remote list {typeid:?}"),
        )?))
    }

    /// The lock the server registered as `typeid` (shared by every client that asks).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if there is no such typeid.
    pub fn registered_lock(&self, typeid: &str) -> Result<LockProxy> {
        let what = format!("remote lock {typeid:?}");
        Ok(LockProxy::from_proxy(self.proxy(
            typeid,
            Vec::new(),
            what,
        )?))
    }

    /// A new list on the server (`SyncManager.list()`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `list` typeid.
    pub fn list<T>(&self) -> Result<ListProxy<T>> {
        Ok(ListProxy::from_proxy(self.proxy(
            "list",
            Vec::new(),
            "remote list".into(),
        )?))
    }

    /// A new lock on the server (`SyncManager.Lock()`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no `Lock` typeid.
    pub fn lock(&self) -> Result<LockProxy> {
        Ok(LockProxy::from_proxy(self.proxy(
            "Lock",
            Vec::new(),
            "remote lock".into(),
        )?))
    }

    /// How many objects the server holds (its `number_of_objects`).
    ///
    /// # Errors
    /// The server's failure.
    pub fn number_of_objects(&self) -> Result<usize> {
        Ok(pickle::from_value(
            self.one_shot("number_of_objects", Vec::new())?,
        )?)
    }

    /// Asks the server to shut down (only a server that allows it: CPython's `start()`ed ones
    /// and ours do).
    ///
    /// # Errors
    /// If the request cannot be sent.
    pub fn shutdown(&self) -> Result<()> {
        self.one_shot("shutdown", Vec::new()).map(drop)
    }
}

/// A proxy connection to one object on a manager server. Calls through one proxy take turns
/// (one request, one reply); [`try_clone`](Self::try_clone) gives another connection to the
/// same object, for another thread (as CPython gives each thread its own).
pub(crate) struct Proxy {
    pub(super) what: String,
    pub(super) ident: String,
    /// The methods the server said it exposes (from `create`).
    pub(super) exposed: Vec<String>,
    conn: own::OwnConnection,
    /// To give back the reference `create` took for us when the proxy goes, as CPython's
    /// proxies do (otherwise an object made per call would live as long as the server).
    manager: ManagerClient,
}

/// What a proxy sent to another process carries: enough to attach to the same object there,
/// the authkey included (as CPython sends it to the processes it starts).
#[derive(Serialize, Deserialize)]
struct ProxyToken {
    address: Address,
    authkey: Vec<u8>,
    ident: String,
    exposed: Vec<String>,
    what: String,
}

/// A proxy travels to processes of ours only (in process arguments, queues, connections):
/// the receiver attaches to the same object with a reference of its own. It does not go
/// through other serializers, which would write the manager's authkey out.
impl Serialize for Proxy {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !crate::share::encoding_for_our_processes() {
            return Err(serde::ser::Error::custom(format!(
                "{}: a manager proxy carries its manager's authkey, so it only travels to \
                 processes of ours (process arguments, queues, connections)",
                self.what
            )));
        }
        ProxyToken {
            address: self.manager.address.clone(),
            authkey: self.manager.authkey.clone(),
            ident: self.ident.clone(),
            exposed: self.exposed.clone(),
            what: self.what.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let t = ProxyToken::deserialize(d)?;
        let manager = ManagerClient {
            address: t.address,
            authkey: t.authkey,
        };
        manager
            .attach(&t.ident, t.exposed, t.what)
            .map_err(|e| crate::share::handle_error_de(e.to_string()))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Best effort, as CPython's finalizer: a server already gone is no error.
        let _ = self
            .manager
            .one_shot("decref", vec![Value::str(self.ident.as_str())]);
    }
}

impl Proxy {
    /// The server's id of the object and the methods it exposes (to attach to it again from
    /// another process).
    pub(crate) fn token(&self) -> (&str, &[String]) {
        (&self.ident, &self.exposed)
    }

    /// A connection of its own to the server, for [`call_on`](Self::call_on): a caller
    /// shared by threads keeps several, so that one thread's blocking call does not hold up
    /// another's.
    pub(crate) fn connection(&self) -> Result<WireConnection> {
        self.manager.proxy_connection()
    }

    /// The server this proxy's object lives on, and its authkey.
    pub(crate) fn manager(&self) -> &ManagerClient {
        &self.manager
    }

    /// The proxy's own connection, if no other call is using it.
    pub(crate) fn own_connection(&self) -> Option<own::OwnGuard<'_>> {
        self.conn.try_take_turn()
    }

    /// [`call`](Self::call) on `conn` (from [`connection`](Self::connection)).
    pub(crate) fn call_on(
        &self,
        conn: &mut WireConnection,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Value> {
        self.send_call(conn, method, args, kwds)?;
        self.reply(conn)
    }

    /// The first half of [`call_on`](Self::call_on): sends the request.
    pub(crate) fn send_call(
        &self,
        conn: &mut WireConnection,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<()> {
        let bytes = pickle::encode(&request(Some(&self.ident), method, args, kwds))?;
        conn.send_bytes(&bytes)
    }

    /// The second half of [`call_on`](Self::call_on): reads the reply.
    pub(crate) fn reply(&self, conn: &mut WireConnection) -> Result<Value> {
        unpack(&self.what, &conn.recv_bytes()?)
    }

    /// Another proxy to the same object, on a connection of its own; it holds a reference of
    /// its own (`incref`), given back when it is dropped.
    pub(crate) fn try_clone(&self) -> Result<Proxy> {
        let conn = self.manager.proxy_connection()?;
        self.manager
            .one_shot("incref", vec![Value::str(self.ident.as_str())])?;
        Ok(Proxy {
            what: self.what.clone(),
            ident: self.ident.clone(),
            exposed: self.exposed.clone(),
            conn: own::OwnConnection::new(conn),
            manager: self.manager.clone(),
        })
    }

    pub(crate) fn call(
        &self,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
    ) -> Result<Value> {
        let bytes = pickle::encode(&request(Some(&self.ident), method, args, kwds))?;
        let mut conn = self.conn.take_turn(|| self.manager.proxy_connection())?;
        conn.send_bytes(&bytes)?;
        unpack(&self.what, &conn.recv_bytes()?)
    }

    pub(super) fn call_as<T: DeserializeOwned>(&self, method: &str, args: Vec<Value>) -> Result<T> {
        Ok(pickle::from_value(self.call(method, args, Vec::new())?)?)
    }
}

proxy_type! {
    /// A dict living in a manager server (CPython's `DictProxy`). Keys and values travel as
    /// pickles.
    DictProxy<K, V>;
    /// Another proxy to the same dict on a connection of its own (for another thread).
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    call_forms! {
        /// `d[key] = value`.
        ///
        /// # Errors
        /// The server's failure; a key or value that does not map onto Python's data model.
        fn set / set_async(&self, key: &K, value: &V) -> ()
            = "__setitem__"(vec![pickle::to_value(key)?, pickle::to_value(value)?]) => reply_unit;

        /// `d.get(key)`: the value, or `None` if the key is absent.
        ///
        /// # Errors
        /// The server's failure; a value that is not a `V`.
        fn get / get_async(&self, key: &K) -> Option<V>
            = "get"(vec![pickle::to_value(key)?]) => reply_as;

        /// `del d[key]`; whether the key was there.
        ///
        /// # Errors
        /// The server's failure.
        fn remove / remove_async(&self, key: &K) -> bool
            = "__delitem__"(vec![pickle::to_value(key)?]) => |r| found(r, "KeyError");

        /// `len(d)`.
        ///
        /// # Errors
        /// The server's failure.
        fn len / len_async(&self) -> usize = "__len__"(Vec::new()) => reply_as;

        /// `len(d) == 0`.
        ///
        /// # Errors
        /// The server's failure.
        fn is_empty / is_empty_async(&self) -> bool
            = "__len__"(Vec::new()) => |r| Ok(reply_as::<usize>(r)? == 0);

        /// `d.items()`, as pairs.
        ///
        /// # Errors
        /// The server's failure; keys or values of other types.
        fn items / items_async(&self) -> Vec<(K, V)> = "items"(Vec::new()) => reply_as;
    }
}

proxy_type! {
    /// A list living in a manager server (CPython's `ListProxy`).
    ListProxy<T>;
    /// Another proxy to the same list on a connection of its own (for another thread).
}

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    call_forms! {
        /// `l.append(item)`.
        ///
        /// # Errors
        /// The server's failure.
        fn append / append_async(&self, item: &T) -> ()
            = "append"(vec![pickle::to_value(item)?]) => reply_unit;

        /// `l[index]` (negative counts from the end).
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) (`IndexError`) out of range.
        fn get / get_async(&self, index: i64) -> T
            = "__getitem__"(vec![Value::Int(index)]) => reply_as;

        /// `len(l)`.
        ///
        /// # Errors
        /// The server's failure.
        fn len / len_async(&self) -> usize = "__len__"(Vec::new()) => reply_as;

        /// `len(l) == 0`.
        ///
        /// # Errors
        /// The server's failure.
        fn is_empty / is_empty_async(&self) -> bool
            = "__len__"(Vec::new()) => |r| Ok(reply_as::<usize>(r)? == 0);

        /// A copy of the whole list (`l._getvalue()`).
        ///
        /// # Errors
        /// The server's failure; items of another type.
        fn to_vec / to_vec_async(&self) -> Vec<T> = "#GETVALUE"(Vec::new()) => reply_as;
    }
}

proxy_type! {
    /// A lock living in a manager server (CPython's `AcquirerProxy` over `threading.Lock`, or
    /// `threading.RLock` from [`ManagerClient::rlock`]). The server counts each proxy connection
    /// as a holder.
    LockProxy;
    /// Another proxy to the same lock on a connection of its own. The server counts each
    /// connection as a different holder (as CPython counts each serving thread): the clone
    /// waits for a lock this proxy holds, even an `RLock`.
}

acquire_forms!(LockProxy, "the lock");

impl LockProxy {
    call_forms! {
        /// `release()`.
        ///
        /// # Errors
        /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if this client does not hold it.
        fn release / release_async(&self) -> () = "release"(Vec::new()) => reply_unit;
    }
}

proxy_type! {
    /// An event living in a manager server (CPython's `EventProxy`).
    EventProxy;
    /// Another proxy to the same event on a connection of its own (a `wait` blocks its
    /// proxy's connection).
}

impl EventProxy {
    call_forms! {
        /// `set()`.
        ///
        /// # Errors
        /// The server's failure.
        fn set / set_async(&self) -> () = "set"(Vec::new()) => reply_unit;

        /// `clear()`.
        ///
        /// # Errors
        /// The server's failure.
        fn clear / clear_async(&self) -> () = "clear"(Vec::new()) => reply_unit;

        /// `is_set()`.
        ///
        /// # Errors
        /// The server's failure.
        fn is_set / is_set_async(&self) -> bool = "is_set"(Vec::new()) => reply_as;
    }

    /// `wait()`: until the event is set. [`is_set`](Self::is_set) is the form that does not
    /// wait.
    ///
    /// # Errors
    /// The server's failure.
    pub fn wait(&self) -> Result<()> {
        self.call_wait(Value::None).map(drop)
    }

    /// `wait(timeout)`: whether the event was set within `timeout`.
    ///
    /// # Errors
    /// The server's failure.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.call_wait(Value::Float(timeout.as_secs_f64()))
    }

    /// Like [`wait_timeout`](Self::wait_timeout), until `deadline`.
    ///
    /// # Errors
    /// The server's failure.
    pub fn wait_deadline(&self, deadline: Instant) -> Result<bool> {
        self.wait_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    fn call_wait(&self, timeout: Value) -> Result<bool> {
        self.proxy.call_as("wait", vec![timeout])
    }

    /// `wait()` as a future: the form of [`wait`](Self::wait) to `.await`, on any executor;
    /// no thread waits for it. Bound it with your runtime's timeout.
    ///
    /// **Cancel-safe**: dropping it changes nothing but the proxy's connection (the next call
    /// connects again); the server's thread for the old one waits until the event is set, as
    /// for a client that went away.
    ///
    /// # Errors
    /// The server's failure; a server that goes away while it waits.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Address, ManagerClient, ManagerServer};
    ///
    /// let server = ManagerServer::bind(&Address::tcp("127.0.0.1:0")?, b"k")?;
    /// let running = server.serve_in_background()?;
    /// let manager = ManagerClient::connect(running.address(), b"k")?;
    /// let event = manager.event()?;
    /// let setter = event.try_clone()?;
    /// let set = std::thread::spawn(move || setter.set());
    /// futures::executor::block_on(event.wait_async())?;
    /// assert!(event.is_set()?);
    /// set.join().unwrap()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg(all(feature = "async", not(loom)))]
    pub fn wait_async(&self) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
        let call = self.proxy.call_async(
            "wait",
            vec![Value::None],
            Vec::new(),
            awaiting::OnDrop::Nothing,
        );
        async move { call.await.map(drop) }
    }
}

proxy_type! {
    /// A value living in a manager server (CPython's `ValueProxy`).
    ValueProxy<T>;
    /// Another proxy to the same value on a connection of its own (for another thread).
}

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    call_forms! {
        /// `v.value`.
        ///
        /// # Errors
        /// The server's failure; a value of another type.
        fn get / get_async(&self) -> T = "get"(Vec::new()) => reply_as;

        /// `v.value = value`.
        ///
        /// # Errors
        /// The server's failure.
        fn set / set_async(&self, value: &T) -> ()
            = "set"(vec![pickle::to_value(value)?]) => reply_unit;
    }
}
