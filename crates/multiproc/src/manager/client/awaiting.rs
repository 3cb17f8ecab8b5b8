//! A proxy's calls, awaited (feature `async`): the request goes out on the proxy's own
//! connection, lent to the call, and the future waits for the reply on the process's epoll
//! thread; no thread waits for it.
//!
//! A call dropped after its request went out cannot take it back: its connection leaves the
//! proxy (the next call connects again) and what the call may still do on the server is
//! undone where it must be ([`OnDrop`]): a lock or slot it takes is released, a barrier it
//! waits at is broken.

use std::future::Future;

use serde::de::DeserializeOwned;

use super::{ManagerClient, Proxy, request, unpack};
use crate::aio::{Attempt, WaitFor};
use crate::connection::wire::WireConnection;
use crate::error::{Error, ErrorKind, Result};
use crate::pickle::{self, Value};

/// What a call dropped after its request went out leaves to undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnDrop {
    /// Nothing: the reply is not needed (an event's wait, a plain call).
    Nothing,
    /// An `acquire`: if it takes the lock (or slot), release it.
    ReleaseIfTaken,
    /// A condition's `wait`: it takes the lock again when it returns; release it.
    Release,
    /// A barrier's `wait`: the party will not come, so break the barrier (as a local
    /// barrier's dropped wait does).
    AbortBarrier,
}

/// An awaiting call on a proxy: its request until sent, then the lent connection until the
/// reply is read.
struct Call<'p> {
    proxy: &'p Proxy,
    request: Option<Result<Vec<u8>>>,
    conn: Option<WireConnection>,
    on_drop: OnDrop,
}

impl Proxy {
    /// `method(*args, **kwds)` on the proxy's object, as a future. Calls through the proxy
    /// take turns on its connection, blocking and awaited alike.
    pub(crate) fn call_async(
        &self,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(Value, Value)>,
        on_drop: OnDrop,
    ) -> impl Future<Output = Result<Value>> + Send + '_ {
        let mut call = Call {
            proxy: self,
            request: Some(
                pickle::encode(&request(Some(&self.ident), method, args, kwds)).map_err(Into::into),
            ),
            conn: None,
            on_drop,
        };
        WaitFor::new(move || call.attempt())
    }

    /// [`call_async`](Self::call_async) with no keyword arguments, its result as a `T`.
    pub(crate) fn call_as_async<T: DeserializeOwned>(
        &self,
        method: &str,
        args: Vec<Value>,
        on_drop: OnDrop,
    ) -> impl Future<Output = Result<T>> + Send + '_ {
        let call = self.call_async(method, args, Vec::new(), on_drop);
        async move { Ok(pickle::from_value(call.await?)?) }
    }
}

impl<'p> Call<'p> {
    fn attempt(&mut self) -> Attempt<'p, Result<Value>> {
        let own = &self.proxy.conn;
        if self.conn.is_none() {
            let Some(lent) = own.lend() else {
                // Another call has the connection: its end wakes us.
                return Attempt::WaitWoken(&own.freed);
            };
            let bytes = match self.request.take() {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    own.give_back(lent);
                    return Attempt::Done(Err(e));
                }
                None => unreachable!("a call's request is taken once, when it is sent"),
            };
            let conn = match lent {
                Some(conn) => Ok(conn),
                None => self.proxy.manager.proxy_connection(),
            };
            let sent = conn.and_then(|mut conn| conn.send_bytes(&bytes).map(|()| conn));
            match sent {
                Ok(conn) => self.conn = Some(conn),
                Err(e) => {
                    own.give_back(None);
                    return Attempt::Done(Err(e));
                }
            }
        }
        let conn = self.conn.as_mut().expect("sent just above or before");
        let ready = conn.readable_now().and_then(|ready| {
            Ok(match ready {
                true => None,
                false => Some(conn.fd().try_clone_to_owned()?),
            })
        });
        match ready {
            Ok(Some(fd)) => Attempt::WaitReadable(fd, None),
            Ok(None) => {
                let mut conn = self.conn.take().expect("looked at just above");
                let reply = self.proxy.reply(&mut conn);
                // A connection that failed may be half way through a message: it goes.
                let broken = reply.as_ref().is_err_and(|e| {
                    matches!(
                        e.kind(),
                        ErrorKind::Io | ErrorKind::Closed | ErrorKind::Protocol
                    )
                });
                own.give_back((!broken).then_some(conn));
                Attempt::Done(reply)
            }
            Err(e) => {
                self.conn.take();
                own.give_back(None);
                Attempt::Done(Err(Error::io(self.proxy.what.as_str(), e)))
            }
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // The reply still to come is this connection's: it leaves the proxy.
        self.proxy.conn.give_back(None);
        if self.on_drop != OnDrop::Nothing {
            undo_later(
                conn,
                self.on_drop,
                self.proxy.manager.clone(),
                self.proxy.ident.clone(),
                self.proxy.what.clone(),
            );
        }
    }
}

/// Undoes on a thread of its own what a dropped call does once its reply comes (which may
/// take as long as the lock is held elsewhere). The thread ends with the reply.
fn undo_later(
    mut conn: WireConnection,
    on_drop: OnDrop,
    manager: ManagerClient,
    ident: String,
    what: String,
) {
    let mut undo = move || -> Result<()> {
        let call = |conn: &mut WireConnection, method: &str| -> Result<Value> {
            let bytes = pickle::encode(&request(Some(&ident), method, Vec::new(), Vec::new()))?;
            conn.send_bytes(&bytes)?;
            unpack(&what, &conn.recv_bytes()?)
        };
        match on_drop {
            OnDrop::Nothing => Ok(()),
            OnDrop::ReleaseIfTaken | OnDrop::Release => {
                let reply = unpack(&what, &conn.recv_bytes()?);
                let taken = match on_drop {
                    OnDrop::ReleaseIfTaken => matches!(reply, Ok(Value::Bool(true))),
                    _ => reply.is_ok(),
                };
                if taken {
                    // On the same connection: the server counts it as the holder.
                    call(&mut conn, "release")?;
                }
                Ok(())
            }
            OnDrop::AbortBarrier => {
                // Already through (the reply is there): nothing to break.
                if conn.readable_now().unwrap_or(true) {
                    return Ok(());
                }
                let mut other = manager.proxy_connection()?;
                call(&mut other, "abort").map(drop)
            }
        }
    };
    let spawned = std::thread::Builder::new()
        .name("multiproc-undo".into())
        .spawn(move || {
            if let Err(e) = undo() {
                tracing::warn!(error = %e, ?on_drop, "undoing a dropped call on a manager");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, ?on_drop, "a dropped call on a manager cannot be undone");
    }
}
