//! `Pipe` and `Connection`: typed messages between processes, through shared memory; and, with
//! the `manager` feature, CPython's `multiprocessing.connection` framing and handshake over
//! sockets (`wire.rs`: [`Address`](crate::Address), `Client`, `Listener`).

pub(crate) mod frame;
mod shared;
#[cfg(feature = "manager")]
pub(crate) mod wire;

#[cfg(feature = "manager")]
pub use wire::{Address, Client, Listener, WireConnection};

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::platform;
use crate::share;
use frame::FrameKind;
use shared::{Body, PipeEnd};

/// Creates a pair of connected [`Connection`]s, like Python's `multiprocessing.Pipe(duplex)`.
///
/// With `duplex` both ends send and receive; without, the first end only receives and the
/// second only sends (Python's `(r, w)` order).
///
/// # Examples
///
/// ```
/// use multiproc::Pipe;
/// let (a, b) = Pipe::new::<String>(true)?;
/// a.send(&"ping".to_string())?;
/// assert_eq!(b.recv()?, "ping");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Debug)]
pub struct Pipe(());

impl Pipe {
    /// Two connected ends; see [`Pipe`].
    ///
    /// # Errors
    /// [`Error::Io`] when the system is out of descriptors or memory.
    #[allow(clippy::new_ret_no_self)] // Python's `Pipe()` returns the two ends
    pub fn new<T>(duplex: bool) -> Result<(Connection<T>, Connection<T>)> {
        let (a, b) = PipeEnd::pair()?;
        if duplex {
            Ok((
                Connection::new(a, true, true),
                Connection::new(b, true, true),
            ))
        } else {
            platform::shutdown(a.socket(), false, true)
                .map_err(|e| Error::io("pipe: shutdown", e))?;
            platform::shutdown(b.socket(), true, false)
                .map_err(|e| Error::io("pipe: shutdown", e))?;
            Ok((
                Connection::new(a, true, false),
                Connection::new(b, false, true),
            ))
        }
    }
}

/// One end of a [`Pipe`]: sends and receives values of type `T` (any serde type), or raw bytes.
///
/// Messages move through shared memory: a send copies the message into a ring, a receive
/// copies it out, and no system call is made while the receiver is awake. A message that
/// carries shared handles (a [`Connection`], a [`Queue`](crate::Queue)…), or is larger than
/// 16 KiB, goes through a socket beside the ring, in its place in line.
///
/// A `Connection` can be passed to a child [`Process`](crate::Process) as (part of) its
/// argument: the child gets the same pipe, not a copy. It is `Send` and `Sync`; concurrent
/// senders (and concurrent receivers), in this process or others, take turns, so messages
/// never interleave.
///
/// Receiving spins for a few microseconds before it sleeps in the kernel, as long as spinning
/// pays on this machine (while the sender is likely to be running on another CPU).
pub struct Connection<T> {
    end: PipeEnd,
    readable: bool,
    writable: bool,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("socket", &self.end.socket())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

const WHAT: &str = "connection";

impl<T> Connection<T> {
    fn new(end: PipeEnd, readable: bool, writable: bool) -> Self {
        Connection {
            end,
            readable,
            writable,
            _type: PhantomData,
        }
    }

    /// Whether this end can receive.
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Sets the largest message this end accepts (default 4 GiB). A longer message fails the
    /// receive with [`Error::Protocol`] (and is dropped) instead of being handed over.
    pub fn set_max_message_size(&self, bytes: u64) {
        self.end.set_max_len(bytes);
    }

    /// Sends raw bytes as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// [`Error::Closed`] when the other end is closed; [`Error::InvalidState`] on a receive-only end.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.end.send(FrameKind::Bytes, bytes, &[])
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`); for a message sent with
    /// [`send`](Self::send) these are its serialized bytes.
    ///
    /// # Errors
    /// [`Error::Closed`] once the other end has closed and every message was read;
    /// [`Error::Protocol`] on a corrupt or truncated message.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.recv_bytes_deadline(None)
    }

    /// [`recv_bytes`](Self::recv_bytes) that gives up after `timeout` with [`Error::Timeout`].
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.recv_bytes_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_bytes_deadline(&self, deadline: Option<Instant>) -> Result<Vec<u8>> {
        self.check_readable()?;
        self.end.recv(deadline, |_, body, _| Ok(body.into_vec()))
    }

    /// Whether a message (or the end of the stream) can be read, waiting up to `timeout`;
    /// `None` waits until one can (Python's `poll(None)`).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        self.check_readable()?;
        self.end
            .poll(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// Closes this end (dropping it does the same). The peer's receives then end with
    /// [`Error::Closed`] once it has read what was sent.
    pub fn close(self) {}

    /// A second handle on the same end, for another thread or process.
    pub fn try_clone(&self) -> Result<Connection<T>> {
        Ok(Connection::new(
            self.end.try_clone()?,
            self.readable,
            self.writable,
        ))
    }

    fn check_readable(&self) -> Result<()> {
        if self.readable {
            Ok(())
        } else {
            Err(Error::invalid(WHAT, "this end of the pipe only sends"))
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::invalid(WHAT, "this end of the pipe only receives"))
        }
    }
}

impl<T: Serialize> Connection<T> {
    /// Sends one value.
    ///
    /// # Errors
    /// [`Error::Closed`] when the other end is closed; [`Error::Serialization`] when `value`
    /// cannot be serialized.
    pub fn send(&self, value: &T) -> Result<()> {
        self.check_writable()?;
        share::with_scratch(|buf| {
            let fds = share::encode_into(WHAT, value, buf)?;
            self.end.send(FrameKind::Value, buf, &fds)
        })
    }
}

impl<T: DeserializeOwned> Connection<T> {
    /// Receives one value, blocking until it arrives.
    ///
    /// # Errors
    /// [`Error::Closed`] once the other end has closed and every message was read;
    /// [`Error::Protocol`] on a corrupt or truncated message; [`Error::Serialization`] when the
    /// bytes are not a `T`.
    pub fn recv(&self) -> Result<T> {
        self.recv_deadline_opt(None)
    }

    /// [`recv`](Self::recv) that gives up after `timeout` with [`Error::Timeout`]. A message
    /// that has begun to arrive (a large one, through the socket) is read whole.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_deadline_opt(Instant::now().checked_add(timeout))
    }

    /// [`recv`](Self::recv) that gives up at `deadline` with [`Error::Timeout`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T> {
        self.recv_deadline_opt(Some(deadline))
    }

    fn recv_deadline_opt(&self, deadline: Option<Instant>) -> Result<T> {
        self.check_readable()?;
        self.end
            .recv(deadline, |kind, body: Body<'_>, fds: Vec<OwnedFd>| {
                if kind != FrameKind::Value {
                    return Err(Error::protocol(
                        WHAT,
                        "expected a value but the message was sent with send_bytes",
                    ));
                }
                share::decode(WHAT, body.as_slice(), fds)
            })
    }
}

#[cfg(all(feature = "async", not(loom)))]
impl<T: Serialize> Connection<T> {
    /// Sends one value, as a future: the form of [`send`](Self::send) to `.await`, on any
    /// executor (feature `async`). It waits (without a thread) for room in the pipe's ring
    /// when the receiver is behind. A value that carries handles, or is larger than a
    /// quarter of the ring (16 KiB), is written to the socket whole once there is room for
    /// its marker.
    ///
    /// **Cancel-safe** in that the value was sent if and only if the future completed with
    /// `Ok`; dropped before, nothing was sent.
    ///
    /// # Errors
    /// As for [`send`](Self::send).
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn send_async(
        &self,
        value: &T,
    ) -> impl std::future::Future<Output = Result<()>> + Send + '_ {
        use crate::aio::{Attempt, WaitFor};
        let encoded = self.check_writable().and_then(|()| {
            let mut buf = Vec::new();
            let fds = share::encode_into(WHAT, value, &mut buf)?;
            Ok((buf, fds))
        });
        let (mut as_waiter, mut spun) = (false, false);
        WaitFor::new(move || match &encoded {
            Ok((buf, fds)) => {
                self.end
                    .send_attempt(FrameKind::Value, buf, fds, &mut as_waiter, &mut spun)
            }
            Err(e) => Attempt::Done(Err(e.clone())),
        })
    }
}

#[cfg(all(feature = "async", not(loom)))]
impl<T: DeserializeOwned> Connection<T> {
    /// Receives one value, as a future: the form of [`recv`](Self::recv) to `.await`, on any
    /// executor (feature `async`). The end's socket is watched by the process's epoll thread
    /// while the ring is empty; no thread waits for it.
    ///
    /// **Cancel-safe**: a message is taken only in the poll that returns it, so dropping the
    /// future loses nothing.
    ///
    /// # Errors
    /// As for [`recv`](Self::recv): [`Error::Closed`] once the other end is gone and every
    /// message was read.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Connection, Pipe, Process};
    ///
    /// let (ours, theirs) = Pipe::new::<String>(true)?;
    /// let mut child = Process::new(|c: Connection<String>| c.send(&"hi".into()).unwrap(), theirs)
    ///     .start()?;
    /// assert_eq!(futures::executor::block_on(ours.recv_async())?, "hi");
    /// child.join()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn recv_async(&self) -> impl std::future::Future<Output = Result<T>> + Send + '_ {
        use crate::aio::{Attempt, WaitFor};
        let readable = self.check_readable();
        let (mut as_waiter, mut spun) = (false, false);
        let mut decode = Some(|kind, body: Body<'_>, fds: Vec<OwnedFd>| {
            if kind != FrameKind::Value {
                return Err(Error::protocol(
                    WHAT,
                    "expected a value but the message was sent with send_bytes",
                ));
            }
            share::decode(WHAT, body.as_slice(), fds)
        });
        WaitFor::new(move || match &readable {
            Ok(()) => self
                .end
                .recv_attempt(&mut as_waiter, &mut spun, &mut decode),
            Err(e) => Attempt::Done(Err(e.clone())),
        })
    }
}

/// The pipe's socket. Messages do not pass through it (they go through shared memory): it
/// becomes readable when the other end is gone, but not reliably when a message arrives, so
/// wait for messages with [`Connection::poll`].
impl<T> AsFd for Connection<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.socket()
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.end)?;
        t.serialize_element(&(u8::from(self.readable) | u8::from(self.writable) << 1))?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (end, flags): (PipeEnd, u8) = Deserialize::deserialize(deserializer)?;
        Ok(Connection::new(end, flags & 1 != 0, flags & 2 != 0))
    }
}
