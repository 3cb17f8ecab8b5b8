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

#![forbid(unsafe_code)]

mod array;
mod client;
mod containers;
mod managed;
mod objects;
mod proxies;
mod python;
mod server;
mod started;
mod stored;
mod sync_objects;
mod xmlrpc;

pub(crate) use client::Proxy;
pub use client::{DictProxy, EventProxy, ListProxy, LockProxy, ManagerClient, ValueProxy};
pub use managed::{Managed, MethodCall};
pub use proxies::{
    ArrayProxy, BarrierProxy, ConditionProxy, NamespaceProxy, ObjectProxy, SemaphoreProxy,
};
pub use server::{ManagerServer, RunningServer};
pub(crate) use server::{QUEUE_EXPOSED, ServedQueue};
pub use started::ManagerProcess;

pub(crate) use crate::connection::wire::fuzz;
pub(crate) use server::fuzz as server_fuzz;
pub(crate) use xmlrpc::fuzz_decode as xmlrpc_fuzz;
