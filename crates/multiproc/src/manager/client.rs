//! The client side of a manager: connect to a `BaseManager` server (CPython's or ours) and use
//! its registered queues through proxies, as CPython's `BaseManager.connect()` and AutoProxy do.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{Address, Client, WireConnection};
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
/// server.register_queue("get_task_queue").put(&5)?;
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

fn request(ident: Option<&str>, func: &str, args: Vec<Value>, kwds: Vec<(Value, Value)>) -> Value {
    Value::Tuple(vec![
        ident.map_or(Value::None, Value::str),
        Value::str(func),
        Value::Tuple(args),
        Value::Dict(kwds),
    ])
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

    /// One request on a connection of its own, as CPython's `dispatch`.
    fn one_shot(&self, func: &str, args: Vec<Value>) -> Result<Value> {
        let mut conn = Client::connect(&self.address, &self.authkey)?;
        conn.send_bytes(&pickle::encode(&request(None, func, args, Vec::new()))?)?;
        unpack(&format!("manager at {}", self.address), &conn.recv_bytes()?)
    }

    /// A proxy for the queue the server registered as `typeid` (`get_task_queue`).
    ///
    /// # Errors
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote) if the server has no such typeid.
    pub fn queue<T>(&self, typeid: &str) -> Result<RemoteQueue<T>> {
        let created = self.one_shot("create", vec![Value::str(typeid)])?;
        let ident = match created {
            Value::Tuple(parts) => parts.into_iter().next().and_then(|v| match v {
                Value::Str(s) => Some(s),
                _ => None,
            }),
            _ => None,
        }
        .ok_or_else(|| Error::protocol("manager", "create did not return an ident"))?;
        let mut conn = Client::connect(&self.address, &self.authkey)?;
        let hello = request(
            None,
            "accept_connection",
            vec![Value::str("MainProcess")],
            Vec::new(),
        );
        conn.send_bytes(&pickle::encode(&hello)?)?;
        unpack("manager", &conn.recv_bytes()?)?;
        Ok(RemoteQueue {
            what: format!("remote queue {typeid:?}"),
            ident,
            conn: Mutex::new(conn),
            _item: PhantomData,
        })
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

/// A queue living in a manager server, used through its proxy connection (CPython's
/// AutoProxy for a registered `queue.Queue`). Items travel as pickles.
pub struct RemoteQueue<T> {
    what: String,
    ident: String,
    conn: Mutex<WireConnection>,
    _item: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for RemoteQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteQueue")
            .field("what", &self.what)
            .field("ident", &self.ident)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> RemoteQueue<T> {
    fn call(&self, method: &str, args: Vec<Value>, kwds: Vec<(Value, Value)>) -> Result<Value> {
        let bytes = pickle::encode(&request(Some(&self.ident), method, args, kwds))?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.send_bytes(&bytes)?;
        unpack(&self.what, &conn.recv_bytes()?)
    }

    /// Puts an item.
    ///
    /// # Errors
    /// [`ErrorKind::Serialization`](crate::ErrorKind::Serialization) if the item does not map
    /// onto Python's data model; the server's failure otherwise.
    pub fn put(&self, item: &T) -> Result<()> {
        self.call("put", vec![pickle::to_value(item)?], Vec::new())
            .map(drop)
    }

    /// Takes an item, waiting up to `timeout` on the server.
    ///
    /// # Errors
    /// [`ErrorKind::Empty`](crate::ErrorKind::Empty) if none came (the server's `queue.Empty`).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let kwds = vec![(Value::str("timeout"), Value::Float(timeout.as_secs_f64()))];
        let v = self.call("get", Vec::new(), kwds)?;
        Ok(pickle::from_value(v)?)
    }

    /// Takes an item if there is one (`get_nowait`).
    ///
    /// # Errors
    /// [`ErrorKind::Empty`](crate::ErrorKind::Empty) if there is none.
    pub fn try_get(&self) -> Result<T> {
        let v = self.call("get_nowait", Vec::new(), Vec::new())?;
        Ok(pickle::from_value(v)?)
    }

    /// Whether the queue is empty (`empty()`).
    ///
    /// # Errors
    /// The server's failure.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// The number of items (`qsize()`).
    ///
    /// # Errors
    /// The server's failure.
    pub fn len(&self) -> Result<usize> {
        match self.call("qsize", Vec::new(), Vec::new())? {
            Value::Int(n) if n >= 0 => Ok(n as usize),
            other => Err(Error::protocol(
                self.what.as_str(),
                format!("qsize returned {}", other.type_name()),
            )),
        }
    }
}
