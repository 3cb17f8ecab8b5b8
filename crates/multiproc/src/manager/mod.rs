//! Talking to CPython: its `multiprocessing.connection` framing and handshake, and a manager
//! server serving named queues to `BaseManager` clients, and a client using a manager's queues
//! (CPython's or ours).

#![forbid(unsafe_code)]

mod client;
mod managed;
mod objects;
mod server;
mod wire;

pub use client::{
    DictProxy, EventProxy, ListProxy, LockProxy, ManagerClient, RemoteQueue, ValueProxy,
};
pub use managed::{Managed, MethodCall};
pub use server::{ManagerServer, RunningServer, ServedQueueHandle};
pub use wire::{Address, Client, Listener, WireConnection};

pub(crate) use wire::fuzz;
