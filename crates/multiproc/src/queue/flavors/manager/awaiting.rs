//! A manager's queue, awaited (feature `async`): the request goes out on a connection of its
//! own and the future waits for the reply on the process's epoll thread.
//!
//! A `get` whose future is dropped after its request went out would lose the item the
//! server sends back: its connection is kept on the handle instead ([`ManagerQueue::in_flight`])
//! and the next `get` of the handle, blocking or awaited, takes that reply rather than asking
//! again. A handle dropped with such connections leaves a thread per connection to wait for
//! the reply and put the item back (at the queue's end).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ManagerQueue;
use crate::aio::Attempt;
use crate::connection::WireConnection;
use crate::error::{Error, Result};
use crate::local_lock::IgnorePoison;
use crate::pickle::{self, Value};

/// What a request in flight asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asked {
    /// An item.
    Get,
    /// Anything else (`put`, `join`): its reply carries nothing to keep.
    Other,
}

/// A future's request in flight, given back to its queue if the future goes first.
pub(in crate::queue) struct InFlight<'q> {
    queue: &'q ManagerQueue,
    conn: Option<(Asked, WireConnection)>,
}

impl<'q> InFlight<'q> {
    pub(in crate::queue) fn new(queue: &'q ManagerQueue) -> Self {
        InFlight { queue, conn: None }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some((Asked::Get, conn)) = self.conn.take() {
            self.queue.in_flight.lock().ignore_poison().push(conn);
        }
    }
}

impl ManagerQueue {
    /// A connection for a call: the proxy's own is not used (it may be in a blocking call's
    /// hands), an idle one or a new one.
    fn spare_connection(&self) -> Result<WireConnection> {
        match self.idle.lock().ignore_poison().pop() {
            Some(conn) => Ok(conn),
            None => self.proxy.connection(),
        }
    }

    /// Gives a connection whose reply was read back to the idle ones.
    fn done_with(&self, conn: WireConnection) {
        let mut idle = self.idle.lock().ignore_poison();
        if idle.len() < super::MAX_IDLE_CONNECTIONS {
            idle.push(conn);
        }
    }

    /// One try at a call for an awaiting future: sends it (once) and, if its reply is there,
    /// reads it; otherwise says to wait for the connection to become readable.
    fn call_attempt<'q>(
        &'q self,
        state: &mut InFlight<'q>,
        asked: Asked,
        request: impl FnOnce(&mut WireConnection) -> Result<()>,
    ) -> Attempt<'q, Result<Value>> {
        let (asked, mut conn) = match state.conn.take() {
            Some(pending) => pending,
            None => {
                // A reply a dropped `get` left comes first.
                let adopted = if asked == Asked::Get {
                    self.in_flight.lock().ignore_poison().pop()
                } else {
                    None
                };
                match adopted {
                    Some(conn) => (Asked::Get, conn),
                    None => {
                        let mut conn = match self.spare_connection() {
                            Ok(c) => c,
                            Err(e) => return Attempt::Done(Err(e)),
                        };
                        if let Err(e) = request(&mut conn) {
                            return Attempt::Done(Err(e));
                        }
                        (asked, conn)
                    }
                }
            }
        };
        match conn.readable_now() {
            Ok(true) => {
                let reply = self.proxy.reply(&mut conn);
                if reply.is_ok() {
                    self.done_with(conn);
                }
                Attempt::Done(reply)
            }
            Ok(false) => match conn.fd().try_clone_to_owned() {
                Ok(fd) => {
                    state.conn = Some((asked, conn));
                    Attempt::WaitReadable(fd, None)
                }
                Err(e) => Attempt::Done(Err(Error::io(self.what(), e))),
            },
            Err(e) => Attempt::Done(Err(Error::io(self.what(), e))),
        }
    }

    pub(in crate::queue) fn get_attempt<'q, T: DeserializeOwned>(
        &'q self,
        state: &mut InFlight<'q>,
    ) -> Attempt<'q, Result<T>> {
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        self.call_attempt(state, Asked::Get, |conn| {
            self.proxy.send_call(conn, "get", Vec::new(), Vec::new())
        })
        .map(|v| v.and_then(|v| Ok(pickle::from_value(v)?)))
    }

    pub(in crate::queue) fn put_attempt<'q, T: Serialize>(
        &'q self,
        item: &T,
        state: &mut InFlight<'q>,
    ) -> Attempt<'q, Result<()>> {
        if let Err(e) = self.check_open() {
            return Attempt::Done(Err(e));
        }
        self.call_attempt(state, Asked::Other, |conn| {
            let item = pickle::to_value(item)?;
            self.proxy.send_call(conn, "put", vec![item], Vec::new())
        })
        .map(|v| v.map(drop))
    }

    pub(in crate::queue) fn join_attempt<'q>(
        &'q self,
        state: &mut InFlight<'q>,
    ) -> Attempt<'q, Result<()>> {
        self.call_attempt(state, Asked::Other, |conn| {
            self.proxy.send_call(conn, "join", Vec::new(), Vec::new())
        })
        .map(|v| v.map(drop))
    }

    /// For a blocking `get`: the reply a dropped awaiting `get` left, if one is waiting,
    /// read within `patience` (`None`: as long as it takes). `None` if there is no such
    /// connection, or its reply did not come in time (it stays for the next `get`).
    pub(super) fn adopt_in_flight(&self, patience: Option<Duration>) -> Option<Result<Value>> {
        let mut conn = self.in_flight.lock().ignore_poison().pop()?;
        let ready = crate::platform::poll_readable(&[conn.fd()], patience)
            .map(|r| r[0])
            .unwrap_or(true);
        if !ready {
            self.in_flight.lock().ignore_poison().push(conn);
            return None;
        }
        let reply = self.proxy.reply(&mut conn);
        if reply.is_ok() {
            self.done_with(conn);
        }
        Some(reply)
    }

    /// When the handle goes: each reply a dropped `get` left is waited for by a thread, and
    /// its item put back.
    pub(super) fn return_in_flight(&mut self) {
        let pending = std::mem::take(&mut *self.in_flight.lock().ignore_poison());
        for mut conn in pending {
            let proxy = match self.proxy.try_clone() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(queue = %self.what(), error = %e, "an item a cancelled get asked for may be lost");
                    continue;
                }
            };
            let what = self.what();
            let spawned = std::thread::Builder::new()
                .name("multiproc-returner".into())
                .spawn(move || {
                    let put_back = proxy
                        .reply(&mut conn)
                        .and_then(|item| proxy.call("put", vec![item], Vec::new()));
                    if let Err(e) = put_back {
                        tracing::warn!(queue = %what, error = %e, "an item a cancelled get asked for could not be put back");
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(queue = %self.what(), error = %e, "an item a cancelled get asked for may be lost");
            }
        }
    }
}
