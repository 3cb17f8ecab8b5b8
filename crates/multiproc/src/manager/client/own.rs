//! A proxy's own connection: used in place by a blocking call, lent out to an awaiting call
//! (feature `async`) while its request is in flight, and made again after an awaiting call
//! that was dropped mid-flight took it away.
//!
//! Calls through one proxy take turns on this one connection, blocking and awaited alike: the
//! server counts a connection as a thread, so a lock taken through the proxy is released
//! through the same connection, whichever form took it.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};

use crate::connection::wire::WireConnection;
use crate::error::Result;
use crate::local_lock::IgnorePoison;

/// Where the connection is.
enum Slot {
    Here(WireConnection),
    /// An awaiting call has it.
    #[cfg_attr(not(all(feature = "async", not(loom))), allow(dead_code))]
    Lent,
    /// Gone with an awaiting call dropped mid-flight (or broken): the next call connects.
    #[cfg_attr(not(all(feature = "async", not(loom))), allow(dead_code))]
    Vacant,
}

pub(super) struct OwnConnection {
    slot: Mutex<Slot>,
    returned: Condvar,
    /// Awaiting calls waiting for their turn.
    #[cfg(all(feature = "async", not(loom)))]
    pub(super) freed: crate::aio::Wakers,
}

/// The connection, held for one call.
pub(crate) struct OwnGuard<'a> {
    guard: Option<MutexGuard<'a, Slot>>,
    #[cfg_attr(not(all(feature = "async", not(loom))), allow(dead_code))]
    own: &'a OwnConnection,
}

impl Deref for OwnGuard<'_> {
    type Target = WireConnection;

    fn deref(&self) -> &WireConnection {
        match self.guard.as_deref() {
            Some(Slot::Here(conn)) => conn,
            _ => unreachable!("a guard is only made over a connection that is here"),
        }
    }
}

impl DerefMut for OwnGuard<'_> {
    fn deref_mut(&mut self) -> &mut WireConnection {
        match self.guard.as_deref_mut() {
            Some(Slot::Here(conn)) => conn,
            _ => unreachable!("a guard is only made over a connection that is here"),
        }
    }
}

impl Drop for OwnGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        // An awaiting call may be waiting for its turn.
        #[cfg(all(feature = "async", not(loom)))]
        self.own.freed.wake_all();
    }
}

impl OwnConnection {
    pub(super) fn new(conn: WireConnection) -> Self {
        OwnConnection {
            slot: Mutex::new(Slot::Here(conn)),
            returned: Condvar::new(),
            #[cfg(all(feature = "async", not(loom)))]
            freed: crate::aio::Wakers::default(),
        }
    }

    /// The connection for a blocking call: waits while an awaiting call has it; connects
    /// with `connect` if it is gone.
    pub(super) fn take_turn(
        &self,
        connect: impl Fn() -> Result<WireConnection>,
    ) -> Result<OwnGuard<'_>> {
        let mut slot = self.slot.lock().ignore_poison();
        loop {
            match &*slot {
                Slot::Here(_) => break,
                Slot::Lent => slot = self.returned.wait(slot).ignore_poison(),
                Slot::Vacant => *slot = Slot::Here(connect()?),
            }
        }
        Ok(OwnGuard {
            guard: Some(slot),
            own: self,
        })
    }

    /// The connection if no call is using it now.
    pub(super) fn try_take_turn(&self) -> Option<OwnGuard<'_>> {
        let slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        matches!(*slot, Slot::Here(_)).then_some(OwnGuard {
            guard: Some(slot),
            own: self,
        })
    }

    /// Lends the connection to an awaiting call if no call is using it: `Some(Some(conn))`,
    /// or `Some(None)` when it is gone (the caller connects, and gives back what it made).
    /// Never waits.
    #[cfg(all(feature = "async", not(loom)))]
    pub(super) fn lend(&self) -> Option<Option<WireConnection>> {
        let mut slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        match std::mem::replace(&mut *slot, Slot::Lent) {
            Slot::Here(conn) => Some(Some(conn)),
            Slot::Vacant => Some(None),
            Slot::Lent => None,
        }
    }

    /// Gives back what was lent: the connection, or nothing if it cannot be used again (its
    /// call was dropped mid-flight, or it broke).
    #[cfg(all(feature = "async", not(loom)))]
    pub(super) fn give_back(&self, conn: Option<WireConnection>) {
        *self.slot.lock().ignore_poison() = conn.map_or(Slot::Vacant, Slot::Here);
        self.returned.notify_all();
        self.freed.wake_all();
    }
}
