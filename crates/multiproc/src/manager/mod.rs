//! Talking to CPython: its `multiprocessing.connection` framing and handshake; a manager
//! server serving named queues, `SyncManager`'s typeids (`dict`, `list`, `Queue`,
//! `JoinableQueue`, `Lock`, `RLock`, `Semaphore`, `BoundedSemaphore`, `Event`, `Condition`,
//! `Barrier`, `Value`, `Array`, `Namespace`) and user types to `BaseManager`/`SyncManager`
//! clients; and a client with proxies for all of these (against CPython's server or ours).
//!
//! A proxy passes to a child process in its arguments (or through a queue or connection), as
//! CPython pickles proxies into its children: the child attaches to the same object, with a
//! reference of its own. A proxy carries its manager's authkey, so no other serializer takes
//! it. Keep the parent's proxy (or another) alive until the child has attached: an object
//! whose last reference goes is deleted by the server.

//!
//! - `server/`: the server and what it serves (containers, locks and other objects, arrays,
//!   user types through [`Managed`]), with Python's semantics over pickled values and the
//!   XML-RPC serializer;
//! - `client/`: [`ManagerClient`] and the proxies;
//! - `typecode.rs`: `array.array` values, which both read and write;
//! - `started.rs`: a server in a child process of its own ([`ManagerProcess`]).
//!
//! CPython's framing and handshake are in `connection/wire.rs`.

#![forbid(unsafe_code)]

mod client;
mod server;
mod started;
mod typecode;

pub(crate) use client::Proxy;
pub use client::{
    ArrayProxy, BarrierProxy, ConditionProxy, DictProxy, EventProxy, ListProxy, LockProxy,
    ManagerClient, NamespaceProxy, ObjectProxy, SemaphoreProxy, ValueProxy,
};
pub use server::{Managed, ManagerServer, MethodCall, RunningServer};
pub(crate) use server::{QUEUE_EXPOSED, ServedQueue};
pub use started::ManagerProcess;

pub(crate) use crate::connection::wire::fuzz;
pub(crate) use server::fuzz as server_fuzz;
pub(crate) use server::xmlrpc_fuzz;
