//! Talking to CPython: its `multiprocessing.connection` framing and handshake today; the
//! manager server and proxies build on it.

#![forbid(unsafe_code)]

mod wire;

pub use wire::{Address, Client, Listener, WireConnection};
