//! The manager flavor of a queue: a queue served by a manager server (ours or CPython's),
//! used through its proxy. Items travel as pickles, so they must map onto Python's data model.

use std::path::PathBuf;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::manager::{Address, ManagerClient, RemoteQueue};
use crate::pickle::{self, Value};
use crate::sync::IgnorePoison;

/// A queue on a manager server.
pub(super) struct ManagerQueue {
    remote: RemoteQueue<()>,
    handle: ManagerHandle,
    closed: super::Closed,
    /// A `join` waiting on a connection of its own: a manager's `join` has no timeout, so
    /// `join_timeout` leaves one waiting in a thread and asks it, and the next `join` or
    /// `join_timeout` picks it up (at most one per handle).
    joiner: Mutex<Option<mpsc::Receiver<Result<()>>>>,
}

/// What a handle sent to another process carries: enough to connect again (the authkey
/// included, as CPython's children inherit it).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct ManagerHandle {
    tcp: Option<String>,
    unix: Option<PathBuf>,
    authkey: Vec<u8>,
    typeid: String,
    /// The server's id of this very queue, and the methods it exposes.
    ident: String,
    exposed: Vec<String>,
}

impl ManagerQueue {
    /// Connects to the queue the server at `address` registered as `typeid`.
    pub(super) fn connect(address: &Address, authkey: &[u8], typeid: &str) -> Result<Self> {
        let manager = ManagerClient::connect(address, authkey)?;
        let remote = manager.queue::<()>(typeid)?;
        let (tcp, unix) = match address {
            Address::Tcp(a) => (Some(a.to_string()), None),
            Address::Unix(p) => (None, Some(p.clone())),
        };
        let (ident, exposed) = remote.token();
        Ok(ManagerQueue {
            remote,
            handle: ManagerHandle {
                tcp,
                unix,
                authkey: authkey.to_vec(),
                typeid: typeid.to_string(),
                ident,
                exposed,
            },
            closed: super::Closed::default(),
            joiner: Mutex::new(None),
        })
    }

    /// Attaches again, from a handle sent by another process, to the very queue it named
    /// (not a new one: a typeid such as `Queue` makes a new queue per call).
    pub(super) fn reopen(handle: ManagerHandle) -> Result<Self> {
        let address = match (&handle.tcp, &handle.unix) {
            (Some(a), _) => Address::tcp(a.as_str())?,
            (None, Some(p)) => Address::unix(p.clone()),
            (None, None) => {
                return Err(Error::protocol("queue", "a manager handle without address"));
            }
        };
        let manager = ManagerClient::connect(&address, &handle.authkey)?;
        let what = format!("remote queue {:?}", handle.typeid);
        let remote = manager.attach_queue::<()>(&handle.ident, handle.exposed.clone(), what)?;
        Ok(ManagerQueue {
            remote,
            handle,
            closed: super::Closed::default(),
            joiner: Mutex::new(None),
        })
    }

    pub(super) fn handle(&self) -> ManagerHandle {
        self.handle.clone()
    }

    pub(super) fn typeid(&self) -> &str {
        &self.handle.typeid
    }

    fn what(&self) -> String {
        format!("queue {:?} on a manager", self.handle.typeid)
    }

    pub(super) fn close(&self) {
        self.closed.close();
    }

    fn check_open(&self) -> Result<()> {
        self.closed.check(|| self.what())
    }

    pub(super) fn put_until<T: Serialize>(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<()> {
        self.check_open()?;
        let item = pickle::to_value(item)?;
        let (method, kwds) = call_form("put", deadline, block);
        self.remote
            .call_raw(method, vec![item], kwds)
            .map(drop)
            .map_err(|e| self.waited_out(e, ErrorKind::Full, block && deadline.is_some(), waited))
    }

    pub(super) fn get_until<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        block: bool,
        waited: Duration,
    ) -> Result<T> {
        self.check_open()?;
        let (method, kwds) = call_form("get", deadline, block);
        let v = self
            .remote
            .call_raw(method, Vec::new(), kwds)
            .map_err(|e| {
                self.waited_out(e, ErrorKind::Empty, block && deadline.is_some(), waited)
            })?;
        Ok(pickle::from_value(v)?)
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

    pub(super) fn len(&self) -> Result<usize> {
        Ok(pickle::from_value(self.remote.call_raw(
            "qsize",
            Vec::new(),
            Vec::new(),
        )?)?)
    }

    pub(super) fn is_full(&self) -> Result<bool> {
        Ok(pickle::from_value(self.remote.call_raw(
            "full",
            Vec::new(),
            Vec::new(),
        )?)?)
    }

    pub(super) fn task_done(&self) -> Result<()> {
        self.remote
            .call_raw("task_done", Vec::new(), Vec::new())
            .map(drop)
    }

    /// Waits until every item put is marked done, until `deadline` if there is one.
    pub(super) fn join_until(&self, deadline: Option<Instant>, waited: Duration) -> Result<()> {
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

    fn joiner_lost(&self) -> Error {
        Error::protocol(
            self.what(),
            "the thread waiting in join() ended without an answer",
        )
    }

    fn join(&self) -> Result<()> {
        self.remote
            .call_raw("join", Vec::new(), Vec::new())
            .map(drop)
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
