//! Talking to CPython: its `multiprocessing.connection` framing and handshake, and a manager
//! server serving named queues to `BaseManager` clients. Proxies (a Rust client of a CPython
//! manager) come next.

#![forbid(unsafe_code)]

mod server;
mod wire;

pub use server::{ManagerServer, RunningServer, ServedQueueHandle};
pub use wire::{Address, Client, Listener, WireConnection};
