//! `Pipe` and `Connection`: framed, typed messages over a Unix socket pair.

pub(crate) mod frame;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::platform;
use crate::share::{self, FdIn, FdOut};
use frame::{Frame, FrameKind, FrameReader, ReadError};

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
    /// [`Error::Io`] when the system is out of descriptors.
    #[allow(clippy::new_ret_no_self)] // Python's `Pipe()` returns the two ends
    pub fn new<T>(duplex: bool) -> Result<(Connection<T>, Connection<T>)> {
        let (a, b) = platform::socketpair().map_err(|e| Error::io("pipe: socketpair", e))?;
        if duplex {
            Ok((
                Connection::from_fd(a, true, true),
                Connection::from_fd(b, true, true),
            ))
        } else {
            platform::shutdown(a.as_fd(), false, true)
                .map_err(|e| Error::io("pipe: shutdown", e))?;
            platform::shutdown(b.as_fd(), true, false)
                .map_err(|e| Error::io("pipe: shutdown", e))?;
            Ok((
                Connection::from_fd(a, true, false),
                Connection::from_fd(b, false, true),
            ))
        }
    }
}

/// One end of a [`Pipe`]: sends and receives values of type `T` (any serde type), or raw bytes.
///
/// A `Connection` can be passed to a child [`Process`](crate::Process) as (part of) its
/// argument: the child gets the same socket, not a copy. It is `Send` and `Sync`; concurrent
/// senders (and concurrent receivers) are serialised by internal locks, so messages never
/// interleave.
///
/// Receiving spins for a few microseconds before it sleeps in the kernel, which makes a round
/// trip between two busy processes several times faster than a plain blocking read.
pub struct Connection<T> {
    sock: OwnedFd,
    readable: bool,
    writable: bool,
    reader: Mutex<FrameReader>,
    writer: Mutex<Vec<u8>>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.sock)
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish()
    }
}

const WHAT: &str = "connection";

impl<T> Connection<T> {
    pub(crate) fn from_fd(sock: OwnedFd, readable: bool, writable: bool) -> Self {
        Connection {
            sock,
            readable,
            writable,
            reader: Mutex::new(FrameReader::new(frame::DEFAULT_MAX_FRAME)),
            writer: Mutex::new(Vec::new()),
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

    /// Sets the largest message this end accepts (default 4 GiB). A longer frame fails the
    /// receive with [`Error::Protocol`] instead of allocating.
    pub fn set_max_message_size(&self, bytes: u64) {
        lock(&self.reader).set_max_len(bytes);
    }

    /// Sends raw bytes as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// [`Error::Closed`] when the other end is closed; [`Error::InvalidState`] on a receive-only end.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        let _guard = lock(&self.writer);
        frame::write_frame(self.sock.as_fd(), FrameKind::Bytes, bytes, &[]).map_err(send_error)
    }

    /// Receives one message as raw bytes (Python's `recv_bytes`); for a message sent with
    /// [`send`](Self::send) these are its serialized bytes.
    ///
    /// # Errors
    /// [`Error::Closed`] once the other end has closed and every message was read;
    /// [`Error::Protocol`] on a corrupt or truncated message.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.recv_frame(None).map(|f| f.payload)
    }

    /// [`recv_bytes`](Self::recv_bytes) that gives up after `timeout` with [`Error::Timeout`].
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.recv_frame(Some(Instant::now() + timeout))
            .map(|f| f.payload)
    }

    /// Whether a message (or the end of the stream) can be read, waiting up to `timeout`;
    /// `None` waits until one can (Python's `poll(None)`).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        self.check_readable()?;
        // A message may already sit in the read-ahead buffer, read with the previous one.
        if lock(&self.reader).has_buffered() {
            return Ok(true);
        }
        let ready = platform::poll_readable(&[self.sock.as_fd()], timeout)
            .map_err(|e| Error::io("connection: poll", e))?;
        Ok(ready[0])
    }

    /// Closes this end (dropping it does the same). The peer's receives then end with
    /// [`Error::Closed`] once it has read what was sent.
    pub fn close(self) {}

    /// A second handle on the same end (`dup`), for another thread or process.
    pub fn try_clone(&self) -> Result<Connection<T>> {
        let fd = self
            .sock
            .try_clone()
            .map_err(|e| Error::io("connection: dup", e))?;
        Ok(Connection::from_fd(fd, self.readable, self.writable))
    }

    pub(crate) fn recv_frame(&self, deadline: Option<Instant>) -> Result<Frame> {
        self.check_readable()?;
        let started = Instant::now();
        let mut reader = lock(&self.reader);
        reader
            .read(self.sock.as_fd(), deadline, true)
            .map_err(|e| match e {
                ReadError::Eof => Error::Closed { what: WHAT.into() },
                ReadError::Timeout => Error::Timeout {
                    what: WHAT.into(),
                    after: deadline
                        .map_or(Duration::ZERO, |d| d.saturating_duration_since(started)),
                },
                ReadError::Protocol(detail) => Error::protocol(WHAT, detail),
                ReadError::Io(e) => Error::io("connection: recv", e),
            })
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
        let mut buf = lock(&self.writer);
        buf.clear();
        let fds = share::encode_into(WHAT, value, &mut buf)?;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let result = frame::write_frame(self.sock.as_fd(), FrameKind::Value, &buf, &borrowed);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new(); // do not pin a huge buffer after one large message
        }
        result.map_err(send_error)
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
    /// cut by the timeout half-way is kept and completed by the next call.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        self.recv_deadline_opt(Some(Instant::now() + timeout))
    }

    /// [`recv`](Self::recv) that gives up at `deadline` with [`Error::Timeout`].
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T> {
        self.recv_deadline_opt(Some(deadline))
    }

    fn recv_deadline_opt(&self, deadline: Option<Instant>) -> Result<T> {
        let frame = self.recv_frame(deadline)?;
        if frame.kind != FrameKind::Value {
            return Err(Error::protocol(
                WHAT,
                "expected a value but the message was sent with send_bytes",
            ));
        }
        share::decode(WHAT, &frame.payload, frame.fds)
    }
}

impl<T> AsFd for Connection<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&FdOut(self.sock.as_fd()))?;
        t.serialize_element(&(u8::from(self.readable) | u8::from(self.writable) << 1))?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (fd, flags): (FdIn, u8) = Deserialize::deserialize(deserializer)?;
        Ok(Connection::from_fd(fd.0, flags & 1 != 0, flags & 2 != 0))
    }
}

fn send_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            Error::Closed { what: WHAT.into() }
        }
        _ => Error::io("connection: send", e),
    }
}

/// Locks a mutex, ignoring poisoning: the protected state is valid at every await point.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
